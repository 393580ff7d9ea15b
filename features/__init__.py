"""Event intake and featurization: event validation, customer state from events, model features."""
