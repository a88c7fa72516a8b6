"""Jobs above the compiler: verify, fit-mip, train, plots, datasets (DESIGN.md: cli -> drivers -> passmanager)."""
