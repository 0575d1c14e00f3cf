"""End-to-end tests: the real `nba serve` process over gRPC."""
