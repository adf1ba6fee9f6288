"""The study as commands: notebooks run per (noise ratio, seed) with papermill and their completion markers
(``chains``), the sweep (local or Slurm), HTML reports, the experiments of ``experiments.yaml``, the generated
findings, and the ``nmtune`` command line (``cli``).

May import anything in the package; nothing imports from here.
"""
