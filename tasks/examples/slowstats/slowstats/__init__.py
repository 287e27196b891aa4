"""A small library with a slow function: the example repository of `evolver init --pytest`."""
