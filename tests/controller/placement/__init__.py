"""Tests of the placement algorithms, wireless model, libraries, simulator and their CLI."""
