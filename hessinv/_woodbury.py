"""The paper's own route (section 6): Woodbury on the lifted system. Lands with issue 3."""


def factorize_blocks(blocks, damping=0.0):
    raise NotImplementedError("method='woodbury' is not implemented yet (issue 3); use the default method='riccati'")
