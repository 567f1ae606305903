"""Reusable pieces of Dropout Prompt Learning (DroPLe, arXiv 2512.07234; docs/methods.md §5.1).

- :mod:`.importance`: token layouts (content / eligible / global tokens per branch), the self-attention,
  class-attention and cross-modal scores, their combination and the drop probabilities.
- :mod:`.perturb`: sampling the dropped tokens and perturbing them (gauss_mult, zero, zero_rescale, uniform, off).
- :mod:`.mag`: the multimodal alignment guidance module and its loss.
- :mod:`.entropy`: the λ annealing schedule and the residual entropy regulariser.

All of these need torch; import the submodules directly (``from dplbench.dropout.importance import ...``).
"""
