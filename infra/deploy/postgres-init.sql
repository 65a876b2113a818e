CREATE DATABASE labelstudio;
