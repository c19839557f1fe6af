"""Integrations with training tools that are not imported by the rest of the package.

- :mod:`hf_alphaadam.integrations.axolotl`: the axolotl plugin (``plugins: [hf_alphaadam.integrations.axolotl.
  AlphaAdamPlugin]``); importing it needs axolotl.

TRL's CLI and LLaMA-Factory need no integration module: the ``optim=`` names are registered in every process by the
package's start-up hook (see :mod:`hf_alphaadam._autoregister`) and the Trainer attaches the alpha monitor itself.
"""
