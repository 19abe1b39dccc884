"""Tools behind the command line: ``bench`` (speed), ``summary`` (facts per model), ``tables`` (text tables) and
``tune`` (hyper-parameter search). The library itself (models, training) does not import them."""
