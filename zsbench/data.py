"""Load, describe, fingerprint and publish prepared datasets.

A *source* is a prepared folder (``<data_dir>/<name>/`` with ``data/*.parquet`` and
``README.md``) or a Hub dataset repo id, optionally with a config: ``org/repo`` or
``org/repo:mvtec`` (the config is the dataset id; ``zsbench data push`` writes one config per
dataset), optionally pinned to a revision (a commit sha, tag or branch):
``org/repo:mvtec@3f2a9c1...``. A pinned source loads, fingerprints and reads its card at that
revision, and the run records it (``dataset.revision``), so a result names the exact data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from zsbench.dataset_card import parse_card, read_card_file
from zsbench.errors import DataError, ZsbenchError
from zsbench.provenance import update_with_file

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?(@[\w./-]+)?$")


class DataSourceError(DataError):
    """A source that is neither a prepared folder nor a Hub repo id, or lacks a split/category."""


class RehostingNotAllowed(ZsbenchError, PermissionError):
    """The dataset's licence does not allow publishing it (override: ``i_have_rights``).

    ``dataset`` and ``license`` are attributes, so a caller can word the override its own way
    (:func:`rehosting_refusal`, e.g. ``--i-have-rights`` on the command line)."""

    dataset: str = ""
    license: str = ""


class HubUnreachableError(ZsbenchError, ConnectionError):
    """The Hugging Face Hub could not be reached or refused the request (offline, no token)."""


def rehosting_refusal(dataset: str, license: str, override: str = "i_have_rights=True") -> str:
    """The message refusing to publish ``dataset``, naming ``override`` as the way out."""
    return (f"{dataset}: its licence ({license}) does not allow re-hosting the data; build it "
            f"locally instead, or pass {override} if you hold the rights to publish it")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Errors of talking to the Hub: OS errors (HTTP, offline mode, token) and the HTTP
    client's own (not OS errors in every huggingface_hub version)."""
    try:
        from huggingface_hub.errors import HTTPError
    except ImportError:
        return (OSError,)
    return (OSError, HTTPError)


def is_local(source: str | Path) -> bool:
    return Path(source).is_dir()


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def image_error_reason(err: BaseException) -> str:
    """Why image bytes could not be decoded, without Pillow's ``<_io.BytesIO object at 0x..>``
    (the caller names the file or record)."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not a readable image (unknown format or a corrupt header)"
    return _OBJECT_REPR.sub("", str(err)).strip() or type(err).__name__


def looks_like_local_path(text: str) -> bool:
    """True for a source meant as a local path rather than a Hub id ``org/name[:config]``:
    it starts with ``.``, ``/`` or ``~``, has a separator without the org/name shape, or its
    first part exists here (``data/mvtecc`` beside a ``data/`` folder)."""
    if text.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in text):
        return True
    if "/" in text and not HUB_ID.match(text):
        return True
    return "/" in text and Path(text.split("/", 1)[0]).exists()


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``org/repo[:config][@revision]`` -> (repo id, config or None); see
    :func:`parse_pinned_source` for the revision."""
    repo, config, _ = parse_pinned_source(source)
    return repo, config


def parse_pinned_source(source: str) -> tuple[str, str | None, str | None]:
    """``org/repo[:config][@revision]`` -> (repo id, config or None, revision or None)."""
    if not HUB_ID.match(source):
        raise DataSourceError(f"{source!r} is neither a prepared dataset folder nor a Hub repo "
                              "id of the form org/name[:config][@revision]")
    source, _, revision = source.partition("@")
    repo, _, config = source.partition(":")
    return repo, config or None, revision or None


def pinned_revision(source: str, revision: str | None) -> str | None:
    """The revision of a Hub source: the ``revision`` argument or the one in the source string
    (``org/name@rev``); both, and different, is an error naming them."""
    _, _, pinned = parse_pinned_source(source)
    if revision and pinned and revision != pinned:
        raise DataSourceError(f"{source!r} is pinned to {pinned!r} but revision={revision!r} "
                              "was also given; use one")
    return revision or pinned


def prepared_names(data_dir: str | Path) -> list[str]:
    """Names of the prepared datasets (folders with ``data/``) in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "data").is_dir())


def resolve_source(name_or_path: str | Path, data_dir: str | Path | None = None) -> str:
    """A dataset name (``mvtec`` -> ``<data_dir>/mvtec``), a prepared folder or a Hub id -> the
    source string :func:`load` takes. Unknown names raise an error listing ``data_dir``."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "data").is_dir():
            raise DataSourceError(f"{path} is not a prepared dataset (no 'data/' folder); "
                                  f"prepare one with 'zsbench data prepare NAME --raw DIR "
                                  f"--out {path.parent}'")
        return str(path)
    if data_dir is not None:
        candidate = Path(data_dir).expanduser() / text
        if (candidate / "data").is_dir():
            return str(candidate)
    if looks_like_local_path(text):
        if path.exists():
            raise DataSourceError(f"{path} is a file, not a prepared dataset folder")
        parent = path.parent
        while not parent.exists() and parent.parent != parent:
            parent = parent.parent
        from zsbench.raw_files import describe_folder

        shown = str(path) if text.startswith("~") else text
        raise DataSourceError(f"not found: {shown} ({describe_folder(parent)})")
    if "/" in text and HUB_ID.match(text) and not path.exists():
        return text
    held = prepared_names(data_dir) if data_dir is not None else []
    where = (f"{data_dir} holds: {', '.join(held)}" if held else
             f"{data_dir} holds no prepared dataset" if data_dir is not None else
             "no data directory was given")
    raise DataSourceError(f"dataset {text!r} not found ({where}). Prepare it with "
                          f"'zsbench data prepare {text} --raw <download> --out "
                          f"{data_dir or '<data_dir>'}', or pass a Hub repo id (org/name).")


def local_shards(folder: str | Path, split: str | None = None) -> list[Path]:
    """The Parquet shards of a prepared folder (of one split, or all), sorted."""
    pattern = "*.parquet" if split is None else f"{split}-*.parquet"
    return sorted((Path(folder) / "data").glob(pattern))


def local_splits(folder: str | Path) -> list[str]:
    return sorted({p.name.split("-", 1)[0] for p in local_shards(folder)})


class ShardError(DataError):
    """A Parquet shard of a prepared dataset that cannot be read (truncated, corrupt)."""


def read_shard(shard: Path, columns: Sequence[str] | None = None) -> Any:
    """``pyarrow.parquet.read_table`` of one shard; a corrupt shard raises :class:`ShardError`
    naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(shard, columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as err:
        raise ShardError(f"{shard}: not a readable Parquet shard ({_shard_reason(err)}); "
                         "prepare the dataset again (zsbench data prepare ... --overwrite)"
                         ) from err


def _shard_reason(err: BaseException) -> str:
    text = re.sub(r" '[^']*'", "", str(err).splitlines()[0] if str(err) else "")
    return " ".join(text.split()) or type(err).__name__


def check_shards(files: Sequence[Path]) -> None:
    """Open every shard's footer (cheap): a truncated shard raises :class:`ShardError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in files:
        try:
            pq.ParquetFile(shard).close()
        except (pa.ArrowException, OSError) as err:
            raise ShardError(f"{shard}: not a readable Parquet shard ({_shard_reason(err)}); "
                             "prepare the dataset again (zsbench data prepare ... --overwrite)"
                             ) from err


def _local_categories(files: Sequence[Path]) -> list[str]:
    values: set[str] = set()
    for file in files:
        values.update(read_shard(file, ["category"]).column(0).unique().to_pylist())
    return sorted(values)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide the ``datasets`` progress bars ("Generating test split: ...", "Filter: ...") inside
    zsbench's own loads, then restore the caller's setting; the environment variable
    ``HF_DATASETS_DISABLE_PROGRESS_BARS`` still wins."""
    import datasets

    if "HF_DATASETS_DISABLE_PROGRESS_BARS" in os.environ or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


@quiet_datasets()
def load(source: str | Path, split: str = "test", categories: Iterable[str] | None = None,
         streaming: bool = False, *, decode: bool = True, revision: str | None = None,
         cache_dir: str | None = None) -> Any:
    """A prepared dataset as ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``).

    ``categories`` keeps only those categories (unknown names are an error for local folders).
    ``decode=False`` leaves ``image``/``mask`` as ``{"bytes", "path"}`` dicts (the evaluator
    decodes them itself); the same as ``cast_column(col, datasets.Image(decode=False))``.
    A Hub source loads at ``revision`` (a commit sha, tag or branch), or at the one pinned in
    the source string (``org/name:config@revision``).
    """
    import datasets

    from zsbench.schema import features

    wanted = None if categories is None else list(categories)
    text = str(source)
    if is_local(text):
        files = local_shards(text, split)
        if not files:
            raise DataSourceError(f"{text}: no '{split}' split; available splits: "
                                  f"{', '.join(local_splits(text)) or 'none'}")
        check_shards(files)
        if wanted is not None:
            known = _local_categories(files)
            unknown = [c for c in wanted if c not in known]
            if unknown:
                raise DataSourceError(f"{text}: unknown categories {unknown} in split "
                                      f"{split!r}; known: {', '.join(known)}")
        try:
            ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]},
                                       split=split, streaming=streaming, features=features(),
                                       cache_dir=cache_dir)
        except Exception:
            for shard in files:  # name the shard at fault (a corrupt page past the footer)
                read_shard(shard)
            raise
    else:
        repo, config = parse_hub_source(text)
        ds = datasets.load_dataset(repo, config, split=split, streaming=streaming,
                                   revision=pinned_revision(text, revision),
                                   cache_dir=cache_dir)
    if wanted is not None:
        keep = set(wanted)
        ds = ds.filter(lambda cats: [c in keep for c in cats], input_columns="category",
                       batched=True)
    if not decode:
        for column in ("image", "mask"):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def raw_records(dataset: Any) -> Any:
    """The dataset with image columns left undecoded (bytes), for fast worker-side decoding."""
    try:
        from datasets import Image as ImageFeature
    except ImportError:  # pragma: no cover - datasets is a dependency
        return dataset
    features = getattr(dataset, "features", None) or {}
    for column in ("image", "mask"):
        feature = features.get(column)
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def dataset_fingerprint(source: str | Path, *, revision: str | None = None,
                        api: Any = None) -> str:
    """``sha256:<hex>`` over the shard names and bytes of a prepared folder, or
    ``<repo>@<commit sha>`` for a Hub source."""
    text = str(source)
    if is_local(text):
        digest = hashlib.sha256()
        shards = local_shards(text)
        if not shards:
            raise DataSourceError(f"{text}: no Parquet shards under data/")
        for shard in shards:
            digest.update(shard.name.encode() + b"\0")
            update_with_file(digest, shard)
        return f"sha256:{digest.hexdigest()}"
    repo, _ = parse_hub_source(text)
    revision = pinned_revision(text, revision)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    return f"{repo}@{api.dataset_info(repo, revision=revision).sha}"


def read_card(source: str | Path, *, revision: str | None = None) -> dict[str, Any]:
    """The card's YAML header (with ``"body"``) of a prepared folder or Hub source; for a Hub
    config the per-dataset card ``<config>/README.md``."""
    text = str(source)
    if is_local(text):
        card = Path(text) / "README.md"
        if not card.is_file():
            raise DataSourceError(f"{text}: no README.md dataset card")
        return read_card_file(card)
    from huggingface_hub import hf_hub_download

    repo, config = parse_hub_source(text)
    revision = pinned_revision(text, revision)
    filename = f"{config}/README.md" if config else "README.md"
    try:
        path = hf_hub_download(repo, filename, repo_type="dataset", revision=revision)
    except _hub_errors() as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise HubUnreachableError(f"cannot read the card {filename} of the Hub dataset {repo}: "
                                  f"{type(err).__name__}: {reason}") from err
    return read_card_file(path)


def dataset_info(source: str | Path) -> dict[str, Any]:
    """``{"dataset", "splits": {split: {n, anomalous, with_mask, categories: {cat: {...}}}}}``:
    counted from the shards of a prepared folder, read from the card of a Hub source."""
    from zsbench.prepare import count_rows

    text = str(source)
    if is_local(text):
        shards = local_shards(text)
        if not shards:
            raise DataSourceError(f"{text}: no Parquet shards under data/")
        rows: list[dict[str, Any]] = []
        name = None
        for shard in shards:
            table = read_shard(shard, ["dataset", "split", "category", "label", "has_mask"])
            batch = table.to_pylist()
            if batch and name is None:
                name = batch[0]["dataset"]
            rows.extend(batch)
        return {"dataset": name or Path(text).name, "splits": count_rows(rows)}
    card = read_card(text)
    block = card.get("zsbench", {})
    if "counts" not in block:
        raise DataSourceError(f"{text}: the dataset card has no zsbench counts")
    return {"dataset": block.get("dataset", text), "splits": block["counts"]}


# --- publishing -------------------------------------------------------------------------------

BEGIN, END = "<!-- zsbench:begin {} -->", "<!-- zsbench:end {} -->"


def merge_root_card(existing: str | None, config: str, local_card: dict[str, Any],
                    local_body: str) -> str:
    """The repo's root ``README.md`` with ``config`` added or replaced (one config per dataset,
    data under ``<config>/data/``), other configs kept."""
    header: dict[str, Any] = {}
    body = ""
    if existing:
        parsed = parse_card(existing)
        body = parsed.pop("body")
        header = parsed
    configs = [c for c in header.get("configs", []) if c.get("config_name") != config]
    configs.append({"config_name": config, "data_files": [
        {"split": f["split"], "path": f"{config}/{f['path']}"}
        for f in local_card["configs"][0]["data_files"]]})
    configs.sort(key=lambda c: c["config_name"])
    for c in configs:
        c.pop("default", None)
    if len(configs) == 1:
        configs[0]["default"] = True
    blocks = dict(header.get("zsbench", {}).get("configs", {}))
    blocks[config] = local_card["zsbench"]
    licences = {header.get("license")} if existing else set()
    licences.discard(None)
    new_header: dict[str, Any] = {
        "pretty_name": (local_card["pretty_name"] if len(configs) == 1
                        else "zsbench anomaly detection datasets"),
        "license": local_card["license"] if len(configs) == 1 or licences == {
            local_card["license"]} else "other",
        "task_categories": sorted(set(header.get("task_categories", []))
                                  | set(local_card["task_categories"])),
        "tags": sorted(set(header.get("tags", [])) | set(local_card["tags"])),
        "configs": configs,
        "zsbench": {"configs": dict(sorted(blocks.items()))},
    }
    if new_header["license"] == "other":
        new_header["license_name"] = ("see-each-config" if len(configs) > 1
                                      else local_card.get("license_name", "other"))
    section = (f"{BEGIN.format(config)}\n"
               + re.sub(r"^(#+) ", r"#\1 ", local_body.strip(), flags=re.MULTILINE)
               + f"\n{END.format(config)}")
    pattern = re.compile(re.escape(BEGIN.format(config)) + ".*?" + re.escape(END.format(config)),
                         flags=re.DOTALL)
    if pattern.search(body):
        body = pattern.sub(lambda _: section, body)
    else:
        if not body.strip():
            body = ("# zsbench datasets\n\nUnified anomaly-detection datasets, one config per "
                    "dataset (`datasets.load_dataset(repo, config)`).\n")
        body = body.rstrip() + "\n\n" + section + "\n"
    return "---\n" + yaml.safe_dump(new_header, sort_keys=False, allow_unicode=True) + \
        "---\n\n" + body


def push(name_or_path: str | Path, repo_id: str, *, data_dir: str | Path | None = None,
         private: bool = False, i_have_rights: bool = False, token: str | None = None,
         api: Any = None) -> str:
    """Publish a prepared dataset as config ``<dataset id>`` of the Hub dataset repo
    ``repo_id`` (files under ``<config>/``, the root card lists every config).

    Refuses datasets whose licence forbids re-hosting unless ``i_have_rights``. Returns the
    repo URL."""
    source = resolve_source(name_or_path, data_dir)
    if not is_local(source):
        raise DataSourceError(f"{source!r} is not a local prepared dataset; only prepared "
                              "folders can be pushed")
    if not HUB_ID.match(repo_id) or ":" in repo_id or "@" in repo_id:
        raise DataSourceError(f"--repo {repo_id!r} must look like ORG/NAME")
    card = read_card(source)
    block = card.get("zsbench", {})
    config = block.get("dataset") or Path(source).name
    if not block.get("rehostable", False) and not i_have_rights:
        license = str(block.get("license", "unknown"))
        refusal = RehostingNotAllowed(rehosting_refusal(config, license))
        refusal.dataset, refusal.license = config, license
        raise refusal
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        _upload(api, source, repo_id, config, private)
    except _hub_errors() as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise HubUnreachableError(f"could not push {config} to the Hub dataset repo {repo_id}: "
                                  f"{type(err).__name__}: {reason} (check the network, "
                                  "HF_HUB_OFFLINE and your token: 'hf auth login')") from err
    logger.info("pushed %s to %s (config %s)", source, repo_id, config)
    return f"https://huggingface.co/datasets/{repo_id}"


def _upload(api: Any, source: str, repo_id: str, config: str, private: bool) -> None:
    """The Hub calls of :func:`push`: the config's files, then the merged root card."""
    from huggingface_hub.errors import EntryNotFoundError

    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=source,
                      path_in_repo=config, delete_patterns=["data/*.parquet"],
                      commit_message=f"zsbench: add dataset {config}")
    existing = None
    try:
        existing_path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset")
        existing = Path(existing_path).read_text(encoding="utf-8")
    except (EntryNotFoundError, FileNotFoundError) as err:  # a new repo has no card yet
        # (a network error is not "no card": merging into nothing would drop other configs)
        logger.info("%s has no README.md yet (%s)", repo_id, type(err).__name__)
    local_text = (Path(source) / "README.md").read_text(encoding="utf-8")
    local_card = parse_card(local_text)
    root = merge_root_card(existing, config, local_card, local_card.pop("body"))
    api.upload_file(path_or_fileobj=root.encode("utf-8"), path_in_repo="README.md",
                    repo_id=repo_id, repo_type="dataset",
                    commit_message=f"zsbench: list config {config}")
