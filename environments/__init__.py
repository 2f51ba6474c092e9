"""Built-in agentrl environments (installed as ``agentrl.environments``).

They are registered by id in :mod:`agentrl.envs.registry`; ``agentrl.make("arithmetic")`` imports the
module on demand. Importing this package imports nothing else.
"""
