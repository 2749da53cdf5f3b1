"""Helpers for the ROS / DDS tests: data patterns, bag writers and small node scripts run as subprocesses."""
