"""Chain-family adapters: each implements :mod:`watcher.ports` for one family of chains."""
