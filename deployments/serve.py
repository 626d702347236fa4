"""Serve every deployment from one process: `python deployments/serve.py --recipe recipes/demo.yaml`.

The deployments are flows/serve.py's (`bidsflow serve` runs the same); this script is where Prefect users look
for them, beside prefect.yaml.
"""

from flows.serve import main

if __name__ == "__main__":
    main()
