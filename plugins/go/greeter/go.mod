module portico.example/go-greeter

go 1.27
