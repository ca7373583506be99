"""Neural gating benchmarks (torch, optional extra ``simstudy[torch]``).

- :mod:`simstudy.neural.routers` -- top-K routers and the sparse MoE layer;
- :mod:`simstudy.neural.jei_dnn` -- jointly learned early exits (JEI-DNN) on a digits proxy;
- :mod:`simstudy.neural.phatgoose` -- post-hoc routing among LoRA experts (PHATGOOSE).
"""
