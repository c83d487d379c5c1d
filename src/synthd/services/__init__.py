"""What routes, the CLI and the console ask for, in plain Python; raises domain errors, never HTTP ones."""
