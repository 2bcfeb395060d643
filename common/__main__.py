import sys

from musebridge.cli.main import main

sys.exit(main())
