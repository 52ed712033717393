"""Training code for the embedded Game-of-24 models (``make models``); not used at run time.

The runtime package reads the shipped weights (:mod:`treesearch.models`); this package makes
them: data (``game24_data``), the training loop (``train``), one script per model
(``train_policy``, ``train_prm``), sampling through vLLM (``sampling``), the policy's evaluation
(``evaluate_policy``) and the tiny HF models the tests build (``tiny``).
"""
