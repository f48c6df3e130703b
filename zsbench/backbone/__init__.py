"""The shared OpenCLIP backbone."""
