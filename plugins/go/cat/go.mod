module portico.example/go-cat

go 1.27
