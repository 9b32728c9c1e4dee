"""One config per method of GiMP's Tables 1 and 2; each takes a size argument ("paper", "cpu" or
"tiny"): `--config=configs/methods/abmil.py:cpu`."""
