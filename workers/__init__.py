"""The worker side: RQ jobs run in threads of one process (see workers.pool), started by workers.runner."""
