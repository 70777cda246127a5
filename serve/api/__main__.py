import sys

from serve.api.process import main

sys.exit(main())
