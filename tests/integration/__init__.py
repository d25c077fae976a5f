"""Tests that need the trained tiny pipeline (torch): offline/online parity of features, signals and lean storage."""
