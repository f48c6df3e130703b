"""Published leaderboard data shipped with zsbench: reported numbers and committed results."""
