"""The TEM modes tem-fuse combines, in its order (the HRTEM last: the registration reference).

The one definition the simulator (:mod:`emfuse.pipeline.synth.tem_modes`), the model's
preprocessing and the tem-fuse job share; a module of its own so that the job's driver does not
import the simulator to learn the order.

>>> MODES[HRTEM]
'hrtem'
"""

MODES = ("bf", "df", "hrtem")
HRTEM = MODES.index("hrtem")
