"""World models in use: CEM in latent space, model-predictive control, collecting episodes, open-loop
prediction and the model-based loop. Built on the engine's loops; the engine never imports this package."""
