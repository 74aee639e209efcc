"""ftc.compiler: recipe -> normalized data -> plan.lock."""
