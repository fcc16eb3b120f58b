"""The aeguard command line (installed as aeguard.cli). Heavy imports happen inside each command."""
