"""The static leaderboard site builder."""
