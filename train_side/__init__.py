"""Training side networks (Ladder, xLadder) from a feature store."""
