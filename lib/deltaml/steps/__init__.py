"""The pipeline's steps, one module each; ``deltaml.steps.STEPS`` declares them in order."""
