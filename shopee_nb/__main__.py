"`python -m shopee_nb`: the same as the `shopee_nb` console script."
import sys
from shopee_nb.cli import main

if __name__ == "__main__": sys.exit(main())
