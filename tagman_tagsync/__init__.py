"""Internals of the StashDB scene tag sync: its history file and StashDB's change feed."""
