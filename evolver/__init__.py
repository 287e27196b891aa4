"""evolver: reflective evolution of programs."""
