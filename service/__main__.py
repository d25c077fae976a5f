from service.api.serve import main

main()
