from vmsnap_host.main import main

main()
