"""ftc.runtime: plan.lock -> verified, trained adapter."""
