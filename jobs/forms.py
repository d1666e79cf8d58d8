from django import forms


class SubmitForm(forms.Form):
    script_path = forms.CharField(max_length=4096, help_text="Absolute path of the batch script on the cluster.")
    working_directory = forms.CharField(max_length=4096, required=False, help_text="Default: the script's directory.")
    name = forms.CharField(max_length=200, required=False)
    partition = forms.CharField(max_length=64, required=False)
    time_limit = forms.CharField(max_length=32, required=False, help_text="Minutes, H:MM:SS or D-HH:MM:SS.")
    nodes = forms.IntegerField(min_value=1, required=False)
    ntasks = forms.IntegerField(min_value=1, required=False)
    cpus_per_task = forms.IntegerField(min_value=1, required=False)
    memory = forms.CharField(max_length=16, required=False, help_text="e.g. 4G")
    gpus = forms.CharField(max_length=40, required=False)
    array = forms.CharField(max_length=100, required=False)
    dependency = forms.CharField(max_length=200, required=False)
    account = forms.CharField(max_length=64, required=False)
    qos = forms.CharField(max_length=64, required=False)
