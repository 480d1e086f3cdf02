"""Commands that are not overnight jobs: synthetic datasets (:mod:`.synth`), results out to
HyperSpy (:mod:`.export`) and the training of the restoration and TEM-fusion models
(:mod:`.train_restore`, :mod:`.train_avae`)."""
