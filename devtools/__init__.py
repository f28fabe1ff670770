"""What runs the project on a developer machine: the embedded PostgreSQL and `make run`."""
