"""Data quality: contracts, drift statistics, the reference profile, and the champion/challenger decision."""
