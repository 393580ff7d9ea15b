"""Policies: the Vowpal Wabbit contextual bandit and baselines; saving and loading them."""
