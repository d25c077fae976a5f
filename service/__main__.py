from service.serve import main

main()
