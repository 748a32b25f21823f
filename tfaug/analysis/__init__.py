"""What a trained run is judged by: evaluation, figures and the generators' diagnostics."""
