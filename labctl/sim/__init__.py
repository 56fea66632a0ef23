"""The simulated backend: device models, instrument emulators, and servers on loopback/pty."""
