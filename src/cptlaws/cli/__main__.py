import sys

from cptlaws.cli import main

sys.exit(main())
