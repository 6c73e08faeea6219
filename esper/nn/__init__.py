"""The ``nn.Module`` shell: the seed slot, the morphogenetic model, the hosts and the blueprints.

May import: ``esper.ops`` and everything it may, and ``torch.nn``.
"""
