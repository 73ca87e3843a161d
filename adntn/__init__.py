"""adntn: nonlinear tensor-network weight generators as torch layers (not built yet; see the issues)."""
