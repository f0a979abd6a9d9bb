"""dgpu.node.services: the node's logic, with adapters injected."""
