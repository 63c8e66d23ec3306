"""Process plumbing: logging, memory tuning, systemd notifications, the C library loader."""
