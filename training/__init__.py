"""Learning loops: simulators, replay and evaluation (later issues), reports and experiment tracking."""
