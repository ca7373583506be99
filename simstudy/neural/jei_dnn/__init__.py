"""JEI-DNN (Regol, Chataoui, Coates, ICLR 2024) on a digits proxy (spec neural.md section 2).

- :mod:`.data` -- digits splits and the long-tailed training variant;
- :mod:`.backbone` -- a tiny ViT, trained once and frozen; cached per-block CLS features;
- :mod:`.model` -- inference modules, gates, exit probabilities, costs, gate targets;
- :mod:`.train` -- warm-up and alternating gate/IM training;
- :mod:`.baselines` -- threshold exits, boosted IMs, oracle, full backbone;
- :mod:`.metrics` -- accuracy/cost, ECE, split conformal with per-exit thresholds;
- :mod:`.bench` -- ``simstudy neural jei-dnn``.
"""
